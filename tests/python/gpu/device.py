"""Whether this machine can run the GPU tests (imported as gpu.device; conftest.py uses it)."""


def gpu_missing() -> str:
    """Why GPU tests cannot run here ("" when they can): torch and inferline's core must both see a device."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return f"torch {torch.__version__} sees no CUDA device"
    from inferline.backends.gpu import core_cuda_status
    status = core_cuda_status()
    if int(status.get("devices", 0)) < 1:
        return f"inferline's core cannot use a GPU: {status.get('reason') or 'no CUDA device'}"
    return ""
