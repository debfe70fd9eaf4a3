"""The metrics papers report, as plain functions the tasks' evaluators call: captions
(pycocoevalcap), retrieval recall, VQAv2 accuracy, attention grounding, and the protocol
record that says how each was computed."""
