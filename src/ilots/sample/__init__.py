"""The synthetic sample city: seeded orthophotos, a Label Studio export and reference vectors,
for the demo and the tests (data tooling, kept out of the library: nothing in ilots imports it
but the ``sample-city`` command)."""
