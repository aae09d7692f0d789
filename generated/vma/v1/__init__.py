"""Generated from protos/vma/v1 by scripts/generate.sh; do not edit."""
