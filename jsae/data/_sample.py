"""A small built-in corpus (about 170 words) so commands, benchmarks and tests run offline."""

# `jsae eval` runs on it with no arguments beyond --sae; pass --text for real evaluations
# (numbers from a few hundred tokens are noisy).
SAMPLE_TEXT = """\
The history of the city goes back more than two thousand years, when a small settlement grew up on the river.
In the morning she walked to the station, bought a newspaper and waited for the train to arrive.
def add(a, b):
    return a + b
The committee will meet again next week to discuss the budget and the plans for the new school.
Photosynthesis converts light energy into chemical energy stored in glucose, releasing oxygen as a by-product.
When Mary and John went to the store, John gave a drink to Mary.
The war lasted from 1914 to 1918, and the treaty was signed in the following year.
He said that the results were surprising, but the data clearly showed a strong effect of the treatment.
Prices rose by 3 percent in March, the largest monthly increase since the beginning of the year.
The cat sat on the mat and watched the birds in the garden while the rain fell softly outside.
"""
