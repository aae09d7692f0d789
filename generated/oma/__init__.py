"""Generated from protos/oma by scripts/generate.sh; do not edit."""
