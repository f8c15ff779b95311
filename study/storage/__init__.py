"""study.storage.files."""
