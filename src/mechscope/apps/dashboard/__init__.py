"""The local web dashboard: a read-only JSON API (`api`, `server`) and a front-end of plain ES modules.

The same modules render from the API or from JSON embedded in one self-contained HTML file
(`standalone`), so an exported page looks like the app and opens from disk with no server.

Example:
    $ mechscope dashboard out/            # prints http://127.0.0.1:PORT/
"""
