"""MAPD: Mistake-Aware Peer-Review Distillation, offline, on local models."""
