-- Batch evaluations: 10 entities x 5 of the 50 seeded flags (50 results an answer), for
-- scripts/bench and scripts/bench-compare.
math.randomseed(7)
local states = {"CA", "NY", "TX", "WA"}
request = function()
  local ents = {}
  for i = 1, 10 do
    ents[i] = string.format('{"entityID":"user-%d","entityType":"user","entityContext":{"state":"%s","age":%d}}',
      math.random(1, 100000), states[math.random(1, 4)], math.random(10, 80))
  end
  local f = math.random(0, 45)
  local body = string.format('{"entities":[%s],"flagKeys":["flag-%d","flag-%d","flag-%d","flag-%d","flag-%d"]}',
    table.concat(ents, ","), f, f + 1, f + 2, f + 3, f + 4)
  return wrk.format("POST", "/api/v1/evaluation/batch", {["Content-Type"] = "application/json"}, body)
end
