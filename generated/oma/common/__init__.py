"""Generated from protos/oma/common by scripts/generate.sh; do not edit."""
