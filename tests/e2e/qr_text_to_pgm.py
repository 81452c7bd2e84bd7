#!/usr/bin/env python3
"""Turns the QR code an agent drew on a terminal back into an image.

Usage: qr_text_to_pgm.py TERMINAL_OUTPUT OUT.pgm

Reads the output captured from the agent's pty, finds the block of lines
drawn with the Unicode half blocks (U+2580, U+2584, U+2588) and spaces, and
writes it as a binary PGM, 8 pixels per module, a drawn half block light and
a blank dark (the agent draws for light-on-dark terminals). Exits 1 when the
output holds no such block.
"""
import sys

GLYPHS = {" ": (0, 0), "\u2580": (1, 0), "\u2584": (0, 1), "\u2588": (1, 1)}


def main():
    text = open(sys.argv[1], encoding="utf-8", errors="replace").read()
    lines = [l.rstrip("\r") for l in text.split("\n")]
    block = []
    for line in lines:
        if line and set(line) <= set(GLYPHS) and set(line) != {" "}:
            block.append(line)
        elif block:
            break
    if len(block) < 10:
        print("no QR code in the output", file=sys.stderr)
        return 1
    width = max(len(l) for l in block)
    rows = []
    for line in block:
        line = line.ljust(width)
        rows.append([GLYPHS[c][0] for c in line])
        rows.append([GLYPHS[c][1] for c in line])
    scale = 8
    pixels = bytearray()
    for row in rows:
        line = bytearray()
        for v in row:
            line += bytes([255 if v else 0]) * scale
        pixels += bytes(line) * scale
    with open(sys.argv[2], "wb") as out:
        out.write(b"P5\n%d %d\n255\n" % (width * scale, len(rows) * scale))
        out.write(pixels)
    return 0


if __name__ == "__main__":
    sys.exit(main())
