"""SGLang plugin for sgl-kernel-sm12x (entry point group ``sglang.srt.plugins``).

This is the only package of the project that imports sglang, and it does so lazily inside
``register()`` so that installing the project never slows SGLang's start-up.
"""

__all__ = ["register"]


def register() -> None:
    """Entry-point hook called by SGLang's ``load_plugins()``.

    The attention backend and the KV-cache registrations arrive with the plugin work; today the
    hook only makes the kernel package importable inside SGLang processes.
    """
    import sgl_kernel_sm12x  # noqa: F401
