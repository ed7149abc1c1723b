"""Test set-up: quiet TensorFlow, keep it off GPUs, small thread pools on 2 cores."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
