"""Generated from protos/vma by scripts/generate.sh; do not edit."""
