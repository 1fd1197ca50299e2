"""From PET files to the network's input, without torch: group and select series
(:mod:`.selection`, :mod:`.tracers`), build the volume (:mod:`.volume`), convert to SUV
(:mod:`.suv`), project (:mod:`.mip`); :mod:`.prepare` runs the whole path.

The rules and their reasons: ``docs/pet-input.md``.
"""
