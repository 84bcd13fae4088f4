-- Creates rows seed-0 .. seed-999, then keeps rewriting them.
local n = 0
request = function()
  local body = string.format('{"id":"seed-%d","title":"Seed post number %d"}', n % 1000, n)
  n = n + 1
  return wrk.format("POST", nil, { ["Content-Type"] = "application/json" }, body)
end
