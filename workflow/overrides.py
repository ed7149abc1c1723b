"""`dotted.key=value` overrides of a config, typed like the field they replace: the command
line's way to change a study variant (`--config.study.variants.resunet="('model.depth=3',)"`).
"""

from __future__ import annotations

import ast
import re

import ml_collections

from workflow.errors import UserError


def parse_override(text: str) -> tuple[str, str]:
    """``"model.name=resunet"`` -> ``("model.name", "resunet")`` (the value still a string)."""
    key, sep, value = str(text).partition("=")
    key = key.strip()
    if not sep or not key or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_]\w*)*", key):
        raise UserError(f"bad override {text!r}: expected 'dotted.key=value' or a configs "
                        "module name")
    return key, value.strip()


def _parse_value(key: str, text: str, current):
    """The override's value, typed like the field it replaces."""
    if isinstance(current, bool) and text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if isinstance(current, str):
            return text
        if isinstance(current, tuple):
            value = tuple(part.strip() for part in text.split(",") if part.strip())
        else:
            raise UserError(f"bad override {key}={text}: cannot parse the value as a "
                            f"{type(current).__name__}") from None
    if isinstance(current, tuple) and isinstance(value, (list, str)):
        value = tuple(value) if isinstance(value, list) else (value,)
    if isinstance(current, str) and not isinstance(value, str):
        value = text
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not type(current) and not (
            isinstance(current, float) and isinstance(value, float)):
        raise UserError(f"bad override {key}={text}: config.{key} is a "
                        f"{type(current).__name__}, got a {type(value).__name__}")
    return value


def _parent(config: ml_collections.ConfigDict, key: str):
    *path, leaf = key.split(".")
    node = config
    for i, part in enumerate(path):
        if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
            raise UserError(f"unknown config key {key!r}: config.{'.'.join(path[:i + 1])} is "
                            "not a section (every key is in configs/default.py)")
        node = node[part]
    if leaf not in node:
        raise UserError(f"unknown config key {key!r} (every key is in configs/default.py)")
    if isinstance(node[leaf], ml_collections.ConfigDict):
        raise UserError(f"override {key!r} names a whole section; set its fields instead")
    return node, leaf


def apply_override(config: ml_collections.ConfigDict, text: str):
    """Apply one ``"dotted.key=value"`` to ``config`` in place (UserError on a bad one)."""
    key, value_text = parse_override(text)
    node, leaf = _parent(config, key)
    value = _parse_value(key, value_text, node[leaf])
    try:
        node[leaf] = value
    except (TypeError, ValueError) as error:
        raise UserError(f"bad override {text!r}: {error}") from None


def flatten(config: ml_collections.ConfigDict, prefix: str = "") -> dict:
    """``{"dotted.key": value}`` of every leaf field."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
