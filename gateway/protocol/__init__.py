"""Protobuf and gRPC stubs generated from proto/ by proto/generate.py: do not edit.

`POOL` holds their descriptors (pass it to tools that look descriptors up, such as
`grpc_reflection.v1alpha.reflection.enable_server_reflection(..., pool=POOL)`).
"""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
