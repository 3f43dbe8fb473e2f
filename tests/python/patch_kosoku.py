"""Patches kosoku 0.1.0's Autobahn cases 12.* and 13.* in the test venv.
Idempotent; ./test.sh runs it. Usage: patch_kosoku.py (with the venv's python)

The slip: on a connection that negotiated permessage-deflate, kosoku hands
a message the server sent *uncompressed* (RSV1 clear, which RFC 7692 §6
allows: a server need not compress every message) to the case's onMessage
as a Python 3 str, the payload's bytes decoded as latin-1, where the
cases, written for Python 2, expect bytes. A binary message then arrives
as text ('%PDF-1.2\\n%\\xc7...' for the PDF of 12.5.1), and hashing it
raises "Strings must be encoded before hashing": the case ends in ERROR
before it compares anything. Compressed messages arrive as bytes and
pass, which is why only the cases whose echoes do not shrink (16- and
64-byte messages, the PDF) or stay under --compression-min-size fail.

The fix turns such a str back into the very bytes it came from
(latin-1 is one byte per code point, 0-255), before the case hashes them.
The case still compares the SHA-1 and the length of every echo with what
it sent, so a wrong echo still fails.
"""

import pathlib

import kosoku.cases

MARKER = "# ringcast test.sh: kosoku 0.1.0 latin-1 str fix"
ANCHOR = "def onMessage(self, msg, binary):\n"
FIX = (
    ANCHOR
    + f"   {MARKER}\n"
    + "   if isinstance(msg, str):\n"
    + "      msg = msg.encode('latin-1')\n"
)

path = pathlib.Path(kosoku.cases.__file__).with_name("case12_x_x.py")
text = path.read_text()
if MARKER not in text:
    assert text.count(ANCHOR) == 1, f"{path}: onMessage not found once; kosoku changed?"
    path.write_text(text.replace(ANCHOR, FIX))
    for cached in path.parent.glob("__pycache__/case12_x_x.*"):
        cached.unlink()
    print(f"patched {path}")
