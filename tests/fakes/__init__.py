"""Test doubles that stand in for outside programs (an SGLang server) in real subprocesses."""
