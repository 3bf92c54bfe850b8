"""Preparing a run: load, validate, check, compile and compact a pipeline.

``validate`` parses a JSON document into a ``Pipeline`` and reports every problem with
its JSON path; ``checks`` adds the semantic checks (references, cycles); ``plan``
compiles the pipeline into the immutable plan the engine runs; ``compact`` keeps the
short copy stored with each run; ``template`` resolves ``{{...}}`` references;
``replyschema`` checks replies against a step's JSON Schema. Imports
``taskloom.contracts``, the standard library and ``jsonschema`` only, never the rest
of the sdk.
"""
