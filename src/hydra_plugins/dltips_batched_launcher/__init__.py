"""dltips' batched launcher: `hydra/launcher=batched` trains same-shaped sweep jobs together."""
