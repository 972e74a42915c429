"""Run the same presets on Modal (`hrmlab run PRESET --backend modal`, `modal run -m hrmlab.cloud.modal_app`).

`orchestrate` holds everything that does not need modal (routing, resources, commits), `launcher` is what the
CLI calls, and `modal_app` is the only module of the package that imports modal. Importing this package does
not import modal, so the core and the CLI work without the optional extra.
"""
