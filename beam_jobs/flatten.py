"""`FlattenApart`: `beam.Flatten` that runs on Flink and Spark whatever else reads its inputs.

Beam's job servers for Flink and Spark reject a pipeline in which a PCollection goes both into a Flatten and
into another step ("PCollectionNodes [...] were consumed but never produced": Beam issue 34647; Beam 2.77's
own test of that shape is still skipped for both runners). The jobs do that (the matched videos are counted
through a Flatten and decoded; the unlabelled ones go into two Flattens), so every Flatten here first passes
each input through an identity step of its own, which only that Flatten reads. On the other runners the
identity steps fuse into their producers' stages and cost nothing.
"""

from __future__ import annotations

import apache_beam as beam


def _same(element):
    return element


class FlattenApart(beam.PTransform):
    """The union of the input PCollections (a tuple or list), as `beam.Flatten`."""

    def _extract_input_pvalues(self, pvalueish):
        # As beam.Flatten's: the inputs are the tuple itself (the default would hand expand() a lone PCollection
        # where the tuple has one).
        pvalueish = tuple(pvalueish)
        return pvalueish, pvalueish

    def expand(self, pcolls):
        apart = [pcoll | f"Apart{i}" >> beam.Map(_same).with_output_types(pcoll.element_type)
                 for i, pcoll in enumerate(pcolls)]
        return apart | "Flatten" >> beam.Flatten()
