-- wrk script measuring the simulator's PUT rate; loopback only. See README.md beside this file.
-- Each request PUTs a valid update to the next of cases 1..1000.
wrk.method = "PUT"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Thalamus-Touchpoint"] = "REST01"
wrk.headers["Thalamus-Token"] = "sim-token"
wrk.body = '{"categoryCode":"Reclamo","typeCode":"Telefonico","status":"In Progress",'
  .. '"resolution":"Unresolved","comments":[{"description":"load"}],'
  .. '"caseData":{"amount":1.5,"refundApproved":true,"attempts":2,'
  .. '"incidentDate":"2025-03-14","notes":"n"}}'
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, "/api/v4/cases/" .. ((n % 1000) + 1))
end
