"""On-device training: LiteRT models (runtime.py is the only importer of LiteRT), their weights, features, sub-models."""
