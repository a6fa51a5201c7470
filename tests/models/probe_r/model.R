# The worker protocol's test model in R: the same endpoints as the Python probe's that
# tests/integration/worker_protocol_test.py drives (shout, refuse, fail, ticks, upper).

shout <- endpoint(
  function(state, text) {
    print("model output on stdout must not break the protocol")
    toupper(text)
  },
  params = list(text = list(type = "string")),
  response = list(type = "string"),
  doc = "The text, upper-cased.",
  example = list(text = "hello")
)

endpoints <- list(
  shout = shout,
  refuse = endpoint(function(state, reason) ml_reject(reason),
                    params = list(reason = list(type = "string")), response = list(type = "null"),
                    doc = "Rejects the input the way a model may: with ml_reject."),
  fail = endpoint(function(state, message) stop(paste("model failure:", message)),
                  params = list(message = list(type = "string")), response = list(type = "null")),
  ticks = endpoint(
    function(state, to, emit, delay = 0, fail_at = -1) {
      for (n in seq_len(max(0, min(to, 1000))) - 1) {
        if (n == fail_at) ml_reject(sprintf("fail_at: refusing tick %d", n))
        if (n) Sys.sleep(min(1, max(0, delay)))
        emit(list(n = n, pid = Sys.getpid()))
      }
    },
    params = list(to = list(type = "integer"), delay = list(type = "number"), fail_at = list(type = "integer")),
    response = list(type = "object", properties = list(n = list(type = "integer"), pid = list(type = "integer")),
                    required = I(c("n", "pid"))),
    streaming = TRUE,
    doc = "Streams ticks 0 .. to-1, `delay` seconds apart; refuses to go on at tick `fail_at`."
  ),
  upper = endpoint(
    function(state, requests) {
      lapply(requests, function(r) {
        if (r$text == "refuse") ml_rejection("refused: refuse")
        else list(text = toupper(r$text), batch_size = length(requests))
      })
    },
    params = list(text = list(type = "string")),
    response = list(type = "object", properties = list(text = list(type = "string"),
                                                       batch_size = list(type = "integer"))),
    batch = list(max_batch_size = 8, max_wait_ms = 5),
    doc = "Upper-cases each word of a batch; \"refuse\" is refused alone."
  )
)
