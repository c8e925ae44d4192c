"""The data steward's console: server-rendered pages over the management services.

Templates (Jinja2), the stylesheet and the one script, and the message catalogues live in
this package and ship in the wheel; nothing is fetched at run time and nothing is built.
The HTTP side (sessions, CSRF, CSP, routes) is web.py; docs/console.md
describes the pages and the security model.
"""
