"""Interoperability with other prompt-learning formats (PEFT)."""

from .peft import export_peft, import_peft

__all__ = ["export_peft", "import_peft"]
