"""A seeded mutation fuzzer of the gateway's and the registry server's request decoders.

It starts a real gateway (`modelgate serve`) and a real registry server (`modelgate registry
serve`) as subprocesses on 127.0.0.1, serving models that together take every V2 datatype
(seeds.py), and sends each decoder mutated requests, one at a time:

    http-json     V2 infer, JSON tensors                  http_cases.py
    http-binary   V2 infer, binary tensor extension       http_cases.py
    http-v1       V1 predict, instances / inputs          http_cases.py
    grpc-raw      ModelInfer, raw_input_contents          grpc_cases.py
    grpc-typed    ModelInfer, typed contents              grpc_cases.py
    grpc-bytes    malformed protobuf, every V2 method     grpc_cases.py
    registry      the registry's JSON API (/api/v1)        registry_cases.py

Each case is a valid request for a random model, mutated: structure-aware (JSON values
replaced by extreme numbers, huge or negative dims, deep nesting, wrong types, odd unicode,
huge strings; binary sizes and header lengths that lie; protobuf fields, shapes, contents
and raw lengths; hostile paths, methods, headers) and byte-level (mutate.py). Case i of a
decoder depends only on (seed, decoder, i), so a run, or one case, is reproducible.
Every --check-every cases a known good request goes through the same decoder and its
answer is compared with ONNX Runtime's in-process answer (or the registry's known data).

Each answer is classified (outcome.py): ok, refused (4xx / INVALID_ARGUMENT, NOT_FOUND...),
shed (503/504 / UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED), or a failure: 5xx /
INTERNAL / UNKNOWN, reset, hang (no answer within --case-timeout), crash (the server exited;
it is restarted), traceback (in the server's log), wrong (a good request answered wrongly).
The log bytes each case made the server write are counted too. Failing cases are saved to
loadtest/results/fuzz-<decoder>/case-<index>.json (+ .body) and resent with --replay.

    python -m loadtest.fuzz                                   # 2,000 cases per decoder
    python -m loadtest.fuzz --cases 20000 --time-limit 600    # the figures' run
    python -m loadtest.fuzz --decoder grpc-raw --seed 7 --cases 500
    python -m loadtest.fuzz --replay loadtest/results/fuzz-http-json/case-000123.json

The run stops at --time-limit seconds in all (server start-up included), sharing the time
left between the decoders still to run. It exits 1 when any case failed, else 0; the table
and a JSON summary (loadtest/results/fuzz-<timestamp>.json) give the figures.
"""
