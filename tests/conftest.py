"""Tests never reach the Hugging Face Hub: huggingface_hub reads this when first imported, and
every subprocess a test starts inherits it (tests that need a cache build one in HF_HOME)."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
