"""MOON3 training: data, losses, trainers and the scripts that build checkpoints."""
