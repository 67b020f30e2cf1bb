"""Content-addressed storage: CIDs, the UnixFS file DAG kubo builds, dag-pb codec, CAR files.

Pure modules (no I/O of their own): `cid` (CIDv1 and the UnixFS DAG builder), `dagpb` (the
dag-pb and UnixFS protobuf codecs), `car` (CARv1 writer and verifying reader).
"""
