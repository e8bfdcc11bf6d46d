"""The exact training engine: computation the frozen model would repeat is skipped or reused, never changed.

Response-only vocabulary logits (:mod:`.loss`), a shared prompt prefix run once as an extra packed row
(:mod:`.attention`), frozen-block reuse across epochs (:mod:`.frozen_cache`), an unedited prefix's KV cache reused
across batches (:mod:`.prefix_cache`), and the chunked forward that ties them together (:mod:`.engine`). It sits
below the wrapper: it is handed the base model, the edit plan and the hooks' switch, and imports nothing from
:mod:`reft.model.reft_model`.
"""
