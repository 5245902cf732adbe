"""Thin command-line apps over the runtime (click)."""
