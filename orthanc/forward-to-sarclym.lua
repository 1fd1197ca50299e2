-- sarclym-node: forward attenuation-corrected PET series from Orthanc to the node.
--
-- Loaded by Orthanc ("LuaScripts" in orthanc.json, see orthanc/orthanc.json). When a series has
-- received no new instance for "StableAge" seconds, Orthanc calls OnStableSeries; if the series
-- is an original, attenuation-corrected PET series it is sent to the node by C-STORE (one
-- association, as an Orthanc job, to the DicomModalities entry named below). Everything else stays in Orthanc: CT,
-- NAC PET (no ATTN in CorrectedImage), derived/reprojected MIP series, and the node's own results
-- (Secondary Capture and SR: Modality OT/SC/SR), so results never loop back to the node. The
-- node itself checks the tracer (FDG), the SUV attributes and the geometry, and records a reason
-- for any series it does not analyse.
--
-- Plain Lua, Orthanc's built-in scripting: no Python plugin (keeps the project free of AGPL).

local NODE = 'sarclym'   -- key of the node in "DicomModalities"

local function contains(value, word)
  if value == nil then
    return false
  end
  for part in string.gmatch(value, '[^\\]+') do
    if string.upper(part) == word then
      return true
    end
  end
  return false
end

-- The tags of the series' first instance ("simplified": keyword -> value).
local function firstInstanceTags(seriesId)
  local series = ParseJson(RestApiGet('/series/' .. seriesId))
  local instances = series['Instances']
  if instances == nil or #instances == 0 then
    return nil
  end
  return ParseJson(RestApiGet('/instances/' .. instances[1] .. '/simplified-tags'))
end

function IsAttenuationCorrectedPet(tags)
  if tags == nil or tags['Modality'] ~= 'PT' then
    return false, 'not PT'
  end
  if not contains(tags['ImageType'], 'ORIGINAL') then
    return false, 'ImageType not ORIGINAL'
  end
  -- Classic PET: CorrectedImage (0028,0051); Enhanced PET: Attenuation Corrected (0018,9759).
  if contains(tags['CorrectedImage'], 'ATTN') or tags['AttenuationCorrected'] == 'YES' then
    return true, 'AC PET'
  end
  return false, 'not attenuation-corrected'
end

function OnStableSeries(seriesId, tags, metadata)
  local ok, why = IsAttenuationCorrectedPet(firstInstanceTags(seriesId))
  if ok then
    print('sarclym: forwarding series ' .. seriesId .. ' to ' .. NODE)
    -- One C-STORE association for the whole series, run as an Orthanc job (visible in /jobs,
    -- retried there); Lua's SendToModality takes single instances only.
    local request = {}
    request['Resources'] = { seriesId }
    request['Asynchronous'] = true
    RestApiPost('/modalities/' .. NODE .. '/store', DumpJson(request, true))
  else
    print('sarclym: not forwarding series ' .. seriesId .. ': ' .. why)
  end
end
