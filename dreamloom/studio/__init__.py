"""``dreamloom studio``: the platform in a browser for people who do not live in a terminal.

Teach a concept from dropped pictures (checked as ``prepare`` checks them, with the advisor's
recommendation) and follow its training; compare, promote through the gate, roll back and deploy
registered versions; generate in every serving mode with adapters by NAME@ALIAS, each image kept
with its recipe. A Gradio app, the convention of the AUTOMATIC1111 and kohya_ss GUIs; loopback by
default. Long work runs as the CLI in child processes (``jobs``); the page polls their progress.
"""
