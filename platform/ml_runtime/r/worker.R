# The model worker for models written in R: the worker protocol (ml_runtime/PROTOCOL.md) over
# the two pipes in $ML_WORKER_FDS, in base R plus jsonlite, so that the same server, OpenAPI
# document, Open Inference Protocol routes, metrics, fault handling, Lambda mode and deploys
# serve an R model unchanged.
#
# Started by the model server with the command ml_runtime/r_worker.py builds:
#   R --no-echo --no-restore --no-save --file=worker.R --args <model.R> <error kinds as JSON>
# (R's own binary, not the Rscript/R shell wrappers: a model image has no shell.)
#
# The model file (see ml_runtime/r/README.md) is sourced into an environment of its own whose
# parent holds the helpers below (`endpoint`, `ml_reject`, `ml_rejection`, `ml_upstream_error`);
# it may define `load_model(model_dir)` and `definitions`, and must define `endpoints`.

suppressPackageStartupMessages(library(jsonlite))

.args <- commandArgs(trailingOnly = TRUE)
if (length(.args) != 2) {
  stop("usage: R --file=worker.R --args <model.R> <error kinds as JSON>")
}
.model_file <- normalizePath(.args[[1]], mustWork = TRUE)
# The `error` values of error bodies, handed over from ml_runtime/errors.py (defined there once).
.errors <- fromJSON(.args[[2]])

# ---------------------------------------------------------------------------------------------
# What a model file uses

# An endpoint: `fn(state, <parameters>)` answers one request; `params` gives each parameter's
# JSON Schema (R has no type hints); a parameter whose formal has a default is optional.
# streaming: `fn(state, <parameters>, emit)` calls emit(item) per item. batch: `fn(state,
# requests)` gets a list of requests (each a named list) and returns a list of answers.
endpoint <- function(fn, params = list(), response = list(), doc = "", example = NULL,
                     streaming = FALSE, batch = NULL) {
  structure(list(fn = fn, params = params, response = response, doc = doc, example = example,
                 streaming = streaming, batch = batch), class = "ml_endpoint")
}

# Refuses an input its schema allows (a 422 "the model rejected the input"), from anywhere in
# an endpoint's function.
ml_reject <- function(message) {
  stop(structure(class = c("ml_rejected", "error", "condition"),
                 list(message = message, call = sys.call(-1))))
}

# A batch endpoint's answer for one request it refuses, in place of that request's answer.
ml_rejection <- function(message) structure(list(message = message), class = "ml_rejection")

# A service the model calls failed: 502 (a bad answer), 503 (unreachable, overloaded) or 504.
ml_upstream_error <- function(message, status = 502L, upstream_status = NULL) {
  stopifnot(status %in% c(502L, 503L, 504L))
  stop(structure(class = c("ml_upstream", "error", "condition"),
                 list(message = message, call = sys.call(-1), status = as.integer(status),
                      upstream_status = upstream_status)))
}

# ---------------------------------------------------------------------------------------------
# Frames: u32 header length, u32 body length (big-endian), JSON header, raw body

.fds <- as.integer(strsplit(Sys.getenv("ML_WORKER_FDS"), ",", fixed = TRUE)[[1]])
if (length(.fds) != 2 || anyNA(.fds)) {
  stop("`worker` is started by the model server (ML_WORKER_FDS is not set); serve the model instead")
}
Sys.unsetenv("ML_WORKER_FDS")
.fd_path <- function(fd) sprintf("/proc/self/fd/%d", fd)
# Two readers of the same pipe: the blocking one reads requests; the non-blocking one looks for
# a cancel between a stream's items. Neither buffers ahead, and during a stream the server sends
# nothing but cancel frames, so no request is ever read by the wrong one.
.input <- fifo(.fd_path(.fds[[1]]), "rb", blocking = TRUE)
.peek <- fifo(.fd_path(.fds[[1]]), "rb", blocking = FALSE)
.output <- fifo(.fd_path(.fds[[2]]), "wb", blocking = TRUE)
.pending <- raw(0)  # bytes the non-blocking reader took that are not a whole frame yet

# The protocol's stdout is not fd 1: a model's prints go to the server's log.
sink(stderr())

.u32 <- function(bytes) sum(as.numeric(bytes) * c(16777216, 65536, 256, 1))
.lengths <- function(header_length, body_length) {
  writeBin(as.integer(c(header_length, body_length)), raw(), size = 4, endian = "big")
}

.read_exact <- function(n) {
  parts <- list()
  have <- 0
  if (length(.pending)) {
    take <- min(n, length(.pending))
    parts[[1]] <- .pending[seq_len(take)]
    .pending <<- if (take < length(.pending)) .pending[(take + 1):length(.pending)] else raw(0)
    have <- take
  }
  while (have < n) {
    chunk <- readBin(.input, "raw", n - have)
    if (!length(chunk)) {
      if (!have) return(NULL)
      stop("the server closed the pipe in the middle of a frame")
    }
    parts[[length(parts) + 1]] <- chunk
    have <- have + length(chunk)
  }
  do.call(c, parts)
}

.read_frame <- function() {
  lengths <- .read_exact(8)
  if (is.null(lengths)) return(NULL)  # end of input: the server is shutting us down
  header_length <- .u32(lengths[1:4])
  body_length <- .u32(lengths[5:8])
  header <- parse_json(rawToChar(.read_exact(header_length)))
  body <- if (body_length) .read_exact(body_length) else raw(0)
  list(header = header, body = body)
}

.json <- function(x) charToRaw(enc2utf8(as.character(
  toJSON(x, auto_unbox = TRUE, null = "null", na = "null", digits = NA))))

.write_frame <- function(header, body = raw(0)) {
  header <- .json(header)
  writeBin(c(.lengths(length(header), length(body)), header, body), .output)
  flush(.output)
}

.cancelled <- function(request_id) {
  repeat {
    # An empty non-blocking pipe is a read error (EAGAIN) to R: nothing has arrived.
    chunk <- tryCatch(readBin(.peek, "raw", 65536), error = function(e) raw(0))
    if (!length(chunk)) break
    .pending <<- c(.pending, chunk)
  }
  found <- FALSE
  while (length(.pending) >= 8) {
    size <- 8 + .u32(.pending[1:4]) + .u32(.pending[5:8])
    if (length(.pending) < size) break
    header <- parse_json(rawToChar(.pending[9:(8 + .u32(.pending[1:4]))]))
    .pending <<- if (size < length(.pending)) .pending[(size + 1):length(.pending)] else raw(0)
    if (identical(header$cancel, request_id)) found <- TRUE  # other cancels: streams that ended
  }
  found
}

# ---------------------------------------------------------------------------------------------
# Requests: a JSON Schema subset (what endpoint params use), checked before the model is called

.is_object <- function(v) is.list(v) && !is.null(names(v))
.is_array <- function(v) is.list(v) && is.null(names(v))

.type_ok <- function(type, v) {
  switch(type,
    object = .is_object(v),
    array = .is_array(v),
    string = is.character(v) && length(v) == 1,
    number = is.numeric(v) && length(v) == 1,
    integer = is.numeric(v) && length(v) == 1 && v == round(v),
    boolean = is.logical(v) && length(v) == 1 && !is.na(v),
    null = is.null(v),
    stop(sprintf("unsupported JSON Schema type %s", type)))
}

.definitions <- list()  # the model's, for "$ref": "#/components/schemas/<name>"

# NULL when `v` fits `schema`, else list(field, detail).
.invalid <- function(schema, v, path) {
  bad <- function(detail) list(field = path, detail = detail)
  if (!is.null(schema[["$ref"]])) schema <- .definitions[[sub("^#/components/schemas/", "", schema[["$ref"]])]]
  if (!is.null(schema$type)) {
    types <- unlist(schema$type)
    if (!any(vapply(types, .type_ok, logical(1), v = v))) {
      return(bad(sprintf("expected %s", paste(types, collapse = " or "))))
    }
  }
  if (!is.null(schema$enum) && !any(vapply(schema$enum, identical, logical(1), v))) {
    return(bad(sprintf("expected one of %s", as.character(toJSON(schema$enum, auto_unbox = TRUE)))))
  }
  if (is.numeric(v) && length(v) == 1) {
    if (!is.null(schema$minimum) && v < schema$minimum) return(bad(sprintf("below the minimum %s", schema$minimum)))
    if (!is.null(schema$maximum) && v > schema$maximum) return(bad(sprintf("above the maximum %s", schema$maximum)))
  }
  if (.is_array(v)) {
    if (!is.null(schema$minItems) && length(v) < schema$minItems) return(bad(sprintf("fewer than %d items", schema$minItems)))
    if (!is.null(schema$maxItems) && length(v) > schema$maxItems) return(bad(sprintf("more than %d items", schema$maxItems)))
    if (!is.null(schema$items)) {
      for (i in seq_along(v)) {
        problem <- .invalid(schema$items, v[[i]], sprintf("%s[%d]", path, i - 1))
        if (!is.null(problem)) return(problem)
      }
    }
  }
  if (.is_object(v)) {
    for (name in unlist(schema$required)) {
      if (!name %in% names(v)) return(list(field = .join(path, name), detail = "required"))
    }
    for (name in names(v)) {
      if (name %in% names(schema$properties)) {
        problem <- .invalid(schema$properties[[name]], v[[name]], .join(path, name))
        if (!is.null(problem)) return(problem)
      } else if (isFALSE(schema$additionalProperties)) {
        return(list(field = .join(path, name), detail = "not a parameter"))
      }
    }
  }
  NULL
}
.join <- function(path, name) if (nzchar(path)) paste0(path, ".", name) else name

# ---------------------------------------------------------------------------------------------
# The model

.parameters <- function(name, ep) {
  formals <- formals(ep$fn)
  if (length(formals) < 1) stop(sprintf("endpoint %s: its function takes no `state` argument", name))
  given <- names(formals)[-1]
  if (ep$streaming) {
    if (!"emit" %in% given) stop(sprintf("streaming endpoint %s: its function needs an `emit` argument", name))
    given <- setdiff(given, "emit")
  }
  if (!is.null(ep$batch)) {
    if (!identical(given, "requests")) stop(sprintf("batch endpoint %s: its function takes (state, requests)", name))
    return(list(names = names(ep$params), required = names(ep$params)))
  }
  missing_schema <- setdiff(given, names(ep$params))
  if (length(missing_schema)) {
    stop(sprintf("endpoint %s: no JSON Schema in `params` for %s", name, paste(missing_schema, collapse = ", ")))
  }
  extra <- setdiff(names(ep$params), given)
  if (length(extra)) stop(sprintf("endpoint %s: `params` names %s, which its function does not take",
                                  name, paste(extra, collapse = ", ")))
  has_default <- vapply(formals[given], function(f) !identical(f, quote(expr = )), logical(1))
  list(names = given, required = given[!has_default])
}

.request_schema <- function(ep, parameters) {
  properties <- if (length(ep$params)) ep$params else structure(list(), names = character(0))
  list(type = "object", properties = properties, required = I(parameters$required),
       additionalProperties = FALSE)
}

.describe <- function(endpoints, parameters) {
  described <- list()
  for (name in sort(names(endpoints))) {
    ep <- endpoints[[name]]
    described[[name]] <- list(
      request = .request_schema(ep, parameters[[name]]),
      response = ep$response,
      binary_parameter = NULL,
      binary_response = FALSE,
      streaming = isTRUE(ep$streaming),
      batch = ep$batch,
      example = ep$example,
      doc = ep$doc
    )
  }
  list(endpoints = described, definitions = if (length(.definitions)) .definitions else structure(list(), names = character(0)))
}

.started <- Sys.time()
.loaded <- tryCatch({
  model <- new.env(parent = globalenv())
  sys.source(.model_file, envir = model)
  if (!exists("endpoints", envir = model, inherits = FALSE) || !is.list(model$endpoints) ||
      !length(model$endpoints) || is.null(names(model$endpoints))) {
    stop(sprintf("%s defines no `endpoints` (a named list of endpoint(...))", .model_file))
  }
  for (name in names(model$endpoints)) {
    if (!inherits(model$endpoints[[name]], "ml_endpoint")) stop(sprintf("endpoints$%s is not an endpoint(...)", name))
  }
  if (exists("definitions", envir = model, inherits = FALSE)) .definitions <<- model$definitions
  parameters <- Map(.parameters, names(model$endpoints), model$endpoints)
  state <- if (exists("load_model", envir = model, inherits = FALSE)) model$load_model(dirname(.model_file)) else NULL
  list(endpoints = model$endpoints, parameters = parameters, state = state,
       description = .describe(model$endpoints, parameters))
}, error = function(e) {
  message <- paste0("loading ", .model_file, " failed: ", conditionMessage(e))
  message(message)
  .write_frame(list(type = "failed", error = message))
  quit(save = "no", status = 1)
})
.write_frame(list(type = "ready", pid = Sys.getpid(),
                  load_seconds = as.numeric(difftime(Sys.time(), .started, units = "secs"))),
             .json(.loaded$description))

# ---------------------------------------------------------------------------------------------
# Answers

.log <- function(request_id, text) {
  message(sprintf("request %s: %s", paste(unlist(request_id), collapse = ","), text))
}

.non_finite <- function(x) {
  if (is.list(x)) return(any(vapply(x, .non_finite, logical(1))))
  is.numeric(x) && any(is.nan(x) | is.infinite(x))
}

.answer <- function(result, request_id) {
  if (.non_finite(result)) {
    .log(request_id, "the answer holds NaN or Infinity, which JSON cannot carry")
    return(list(status = 500L, body = raw(0)))
  }
  body <- tryCatch(.json(result), error = function(e) {
    .log(request_id, paste("the answer cannot be sent as JSON:", conditionMessage(e)))
    NULL
  })
  if (is.null(body)) list(status = 500L, body = raw(0)) else list(status = 200L, body = body)
}

.failure <- function(e, request_id) {
  if (inherits(e, "ml_rejected") || inherits(e, "ml_rejection")) {
    .log(request_id, paste("the model rejected the input:", conditionMessage(e)))
    return(list(status = 422L, body = .json(list(error = .errors$MODEL_REJECTED_INPUT, detail = conditionMessage(e)))))
  }
  if (inherits(e, "ml_upstream")) {
    .log(request_id, sprintf("upstream failure (%d): %s", e$status, conditionMessage(e)))
    return(list(status = e$status, body = .json(list(error = .errors$UPSTREAM_FAILED, detail = conditionMessage(e),
                                                    upstream_status = e$upstream_status))))
  }
  .log(request_id, paste0("the model raised: ", conditionMessage(e), "\n",
                          paste(vapply(e$calls, function(c) paste(deparse(c, nlines = 1), collapse = ""), ""),
                                collapse = "\n")))
  list(status = 500L, body = raw(0))
}
conditionMessage.ml_rejection <- function(c) c$message

# Runs `expr`; an error becomes its failure answer, with the calls that led to it for the log.
.guarded <- function(expr, request_id) {
  calls <- NULL
  tryCatch(withCallingHandlers(expr, error = function(e) calls <<- sys.calls()),
           error = function(e) {
             e$calls <- utils::head(calls, -2)
             .failure(e, request_id)
           })
}

# The request's arguments, or the 400/422 answer it gets instead.
.arguments <- function(name, body) {
  payload <- if (length(body)) tryCatch(parse_json(rawToChar(body)), error = function(e) e) else structure(list(), names = character(0))
  if (inherits(payload, "error")) {
    return(list(status = 400L, body = .json(list(error = .errors$MALFORMED_JSON, detail = conditionMessage(payload)))))
  }
  if (is.list(payload) && !length(payload)) payload <- structure(list(), names = character(0))  # {} or []
  ep <- .loaded$endpoints[[name]]
  problem <- .invalid(.request_schema(ep, .loaded$parameters[[name]]), payload, "")
  if (!is.null(problem)) {
    return(list(status = 422L, body = .json(list(error = .errors$INVALID_REQUEST, field = problem$field,
                                                detail = problem$detail))))
  }
  list(arguments = payload)
}

.unknown_endpoint <- function(name) {
  list(status = 422L, body = .json(list(error = .errors$INVALID_REQUEST, field = "endpoint",
                                       detail = sprintf("no endpoint %s", name))))
}

.handle <- function(header, body) {
  request_id <- header$id
  name <- if (is.null(header$endpoint)) "" else header$endpoint
  ep <- .loaded$endpoints[[name]]
  outcome <- if (is.null(ep)) .unknown_endpoint(name) else .arguments(name, body)
  if (is.null(outcome$status)) {
    outcome <- .guarded(.answer(do.call(ep$fn, c(list(.loaded$state), outcome$arguments)), request_id), request_id)
  }
  .write_frame(list(id = request_id, status = outcome$status), outcome$body)
}

.stream <- function(header, body) {
  request_id <- header$id
  ep <- .loaded$endpoints[[header$endpoint]]
  outcome <- .arguments(header$endpoint, body)
  if (is.null(outcome$status)) {
    emit <- function(item) {
      if (.cancelled(request_id)) {
        stop(structure(class = c("ml_cancelled", "condition"), list(message = "cancelled", call = NULL)))
      }
      answer <- .answer(item, request_id)
      if (answer$status != 200L) stop("an item of the stream cannot be sent as JSON")
      .write_frame(list(id = request_id, chunk = TRUE), answer$body)
    }
    outcome <- tryCatch(
      .guarded({
        do.call(ep$fn, c(list(.loaded$state), outcome$arguments, list(emit = emit)))
        list(status = 200L, body = raw(0))
      }, request_id),
      ml_cancelled = function(c) list(status = 499L, body = raw(0)))
  }
  .write_frame(list(id = request_id, status = outcome$status), outcome$body)
}

.handle_batch <- function(header, body) {
  ids <- header$id
  name <- header$endpoint
  ep <- .loaded$endpoints[[name]]
  sizes <- as.numeric(unlist(header$sizes))
  ends <- cumsum(sizes)
  outcomes <- vector("list", length(ids))
  requests <- list()
  positions <- integer(0)
  for (i in seq_along(ids)) {
    item <- if (sizes[[i]]) body[(ends[[i]] - sizes[[i]] + 1):ends[[i]]] else raw(0)
    outcome <- if (is.null(ep)) .unknown_endpoint(name) else .arguments(name, item)
    if (is.null(outcome$status)) {
      requests[[length(requests) + 1]] <- outcome$arguments
      positions <- c(positions, i)
    } else {
      outcomes[[i]] <- outcome
    }
  }
  call <- function(items) {
    results <- ep$fn(.loaded$state, items)
    if (length(results) != length(items)) stop(sprintf("batch endpoint %s answered %d of %d requests",
                                                       name, length(results), length(items)))
    results
  }
  answer <- function(result, i) {
    if (inherits(result, "ml_rejection")) .failure(result, ids[[i]]) else .answer(result, ids[[i]])
  }
  if (length(requests)) {
    results <- tryCatch(call(requests), error = function(e) e)
    if (!inherits(results, "error")) {
      for (k in seq_along(positions)) outcomes[[positions[[k]]]] <- answer(results[[k]], positions[[k]])
    } else {
      # Whose request made the model fail, calling them one by one tells.
      for (k in seq_along(positions)) {
        i <- positions[[k]]
        outcomes[[i]] <- .guarded(answer(call(requests[k])[[1]], i), ids[[i]])
      }
    }
  }
  .write_frame(list(id = ids, status = lapply(outcomes, `[[`, "status"),
                    sizes = lapply(outcomes, function(o) length(o$body))),
               do.call(c, c(list(raw(0)), lapply(outcomes, `[[`, "body"))))
}

repeat {
  frame <- .read_frame()
  if (is.null(frame)) break
  header <- frame$header
  if (!is.null(header$cancel)) next  # for a stream that ended before the cancel arrived
  ep <- if (is.null(header$endpoint)) NULL else .loaded$endpoints[[header$endpoint]]
  if (!is.null(header$sizes)) {
    .handle_batch(header, frame$body)
  } else if (!is.null(ep) && isTRUE(ep$streaming)) {
    .stream(header, frame$body)
  } else {
    .handle(header, frame$body)
  }
}
quit(save = "no", status = 0)
