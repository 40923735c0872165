#!/usr/bin/env bash
# Regenerates the built-in probe clips (exporter/data/default.wav, short.wav) and their transcripts.
# Needs Debian's espeak-ng and sox. The clip is synthetic Mandarin speech: good enough for a
# real ASR model to transcribe, and deterministic, so its expected transcript is known.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out="$here/exporter/data"
text="今天天气很好我们去公园"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
espeak-ng -v cmn -s 175 -w "$tmp/raw.wav" "$text"
# 16 kHz, mono, 16-bit PCM; a short pad of silence at both ends, as a microphone would record.
sox "$tmp/raw.wav" -r 16000 -c 1 -b 16 "$out/default.wav" pad 0.3 0.3
printf '%s\n' "$text" > "$out/default.txt"
soxi "$out/default.wav"
# The short clip (about 1.3 s) for the timestamp probe: whoAsr v2 keeps every upload to
# /timestamp/predict on disk for good, so that probe sends as little as still checks alignment.
short="今天天气"
espeak-ng -v cmn -s 320 -w "$tmp/short.wav" "$short"
sox "$tmp/short.wav" -r 16000 -c 1 -b 16 "$out/short.wav" pad 0.15 0.15
printf '%s\n' "$short" > "$out/short.txt"
soxi "$out/short.wav"
