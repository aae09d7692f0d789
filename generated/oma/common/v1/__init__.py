"""Generated from protos/oma/common/v1 by scripts/generate.sh; do not edit."""
