"""The adapter interface that a per-architecture patch module implements."""

from __future__ import annotations

from typing import Any


class ArchAdapter:
    """Architecture specifics for the shared hooks in `stop_hf.hooks`.

    Subclasses implement `install_capture`: wrap the video encoder so that each call captures its signals into its
    own buffer (`state.start_capture` / `state.capturing()`, per call, never per model) and hands one `VideoRecord`
    per video to the prefill (`state.set_encoded`). They may override the position policy.
    """

    name: str = ""
    #: True when the LLM uses 1-D positions (decode positions can be derived from the last prompt position).
    positions_1d: bool = True
    #: method -> reference position policy for this architecture; others use `default_position`.
    position_policy: dict[str, str] = {}
    default_position: str = "original"

    def default_position_mode(self, method: str) -> str:
        return self.position_policy.get(method, self.default_position)

    def base_model(self, model: Any) -> Any:
        return model.model

    def vision_module(self, model: Any) -> Any:
        """The vision encoder (timed as the 'vision' stage)."""
        return model.model.vision_tower

    def language_model(self, model: Any) -> Any:
        return model.model.language_model

    def video_token_id(self, model: Any) -> int:
        return int(model.config.video_token_id)

    @staticmethod
    def check_layer_index(configured: int, count: int, unit: str) -> int:
        """`stop_config.saliency_layer` as a non-negative index into `count` layers/blocks, or a clear error."""
        if not -count <= configured < count:
            raise ValueError(
                f"stop_config.saliency_layer={configured} is out of range for a vision tower with {count} {unit}; "
                f"allowed: -{count} .. {count - 1}"
            )
        return configured % count

    def install_capture(self, model: Any, state: Any) -> list[Any]:  # pragma: no cover - abstract
        raise NotImplementedError
