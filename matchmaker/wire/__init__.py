"""The AMQP wire, the only package that imports pika.

``broker`` (topology and connections), ``amqp`` (pika's public names for the rest of the
code), ``codec`` (frames as pure bytes), ``frames`` (the codec on a pika connection),
``pika_shim`` (every private pika name, and the tested versions), ``confirms`` and
``dispatch`` (the push stage), ``select_path`` (the same through pika's public asynchronous
API, for ``benchmarks/wire.py``).
"""
