-- Upserts rows with ids unique per wrk thread and request.
local counter = 0
setup = function(thread)
  thread:set("thread_id", counter)
  counter = counter + 1
end
local n = 0
request = function()
  n = n + 1
  local body = string.format('{"id":"t%d-%d","title":"Post %d"}', thread_id, n, n)
  return wrk.format("POST", nil, { ["Content-Type"] = "application/json" }, body)
end
