"""What a song is made of: decoding, onset features, tempo, beats, sections, the segment plan.

How this works: ``audio`` decodes any supported file to mono floats;
``features`` computes onset strength; ``beats`` chooses the tempo level
and tracks the beats over a local period; ``meter`` finds the meter and
downbeats; ``analysis`` puts them together with energy and sections;
``plan`` cuts segments on beats and fits a writer's ideas to them; ``segments_file`` stores the plan in a run; ``synth``
makes test songs. Pure numpy/scipy: nothing compiles at import time.

May import: ``daemon.runs`` (for fsutil) and the floor.
"""
