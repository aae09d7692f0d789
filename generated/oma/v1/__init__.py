"""Generated from protos/oma/v1 by scripts/generate.sh; do not edit."""
