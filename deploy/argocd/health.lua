-- Argo CD health check for workspace.assist.dev/RemoteAssistance.
-- observedGeneration first (a spec change the operator has not seen yet is Progressing), then
-- Stalled (a person must act: Degraded), Paused (Suspended), Ready (Healthy), else Progressing.
local hs = {}

local function condition(conditionType)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == conditionType then
      return c
    end
  end
  return nil
end

if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report status"
  return hs
end

if obj.metadata.generation ~= nil and obj.status.observedGeneration ~= obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe the latest spec"
  return hs
end

local stalled = condition("Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = stalled.message
  return hs
end

local synced = condition("Synced")
if synced ~= nil and synced.status == "False" and synced.reason == "Paused" then
  hs.status = "Suspended"
  hs.message = synced.message
  return hs
end

local ready = condition("Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message
  return hs
end

hs.status = "Progressing"
if ready ~= nil and ready.message ~= "" then
  hs.message = ready.message
else
  hs.message = "Waiting for the remote assistance"
end
return hs
