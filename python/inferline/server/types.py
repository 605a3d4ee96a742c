"""Protocol-neutral request/response types shared by the gRPC and REST frontends."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np


@dataclass
class InferInput:
    name: str
    datatype: str
    """KServe datatype ("FP32", "INT64", ...)."""
    shape: list
    data: np.ndarray
    """Decoded by the frontend, already in `shape`."""


@dataclass
class InferRequest:
    model_name: str
    model_version: str = ""
    """"" = the live version."""
    id: str = ""
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    """Requested output names; empty = all."""
    priority: int = 0
    """KServe priority: 0 = default, 1 = highest, larger = lower."""
    timeout_us: Optional[int] = None
    routing_key: Optional[str] = None
    parameters: dict = field(default_factory=dict)


@dataclass
class InferOutput:
    name: str
    datatype: str
    shape: list
    data: np.ndarray


@dataclass
class InferResponse:
    model_name: str
    model_version: str
    """The version that produced the outputs (a fallback's, when one answered)."""
    id: str = ""
    outputs: list = field(default_factory=list)
    parameters: dict = field(default_factory=dict)
    """Response parameters (string values): ``routed_to`` NAME:VERSION and, when a fallback
    answered, ``fallback_reason``."""
