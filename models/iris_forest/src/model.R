# Serving handler for the iris random forest (R's randomForest, from Debian's r-cran-randomforest).
# The interface is the R worker's (platform/ml_runtime/r/README.md): `load_model`, `definitions`
# and `endpoints`; predict takes and answers what the Python iris model's does.

# Measurements outside this range are not flowers: refused with a 422.
MAX_CM <- 100
FEATURES <- c(sepal_length = "Sepal.Length", sepal_width = "Sepal.Width",
              petal_length = "Petal.Length", petal_width = "Petal.Width")

load_model <- function(model_dir) {
  suppressPackageStartupMessages(library(randomForest))
  readRDS(file.path(model_dir, "artifacts", "forest.rds"))
}

centimetres <- list(type = "number", description = "cm")
definitions <- list(
  Flower = list(
    title = "Flower", type = "object",
    properties = list(sepal_length = centimetres, sepal_width = centimetres,
                      petal_length = centimetres, petal_width = centimetres),
    required = I(names(FEATURES)), additionalProperties = FALSE
  ),
  Prediction = list(
    title = "Prediction", type = "object",
    properties = list(
      species = list(type = "string", description = "\"setosa\", \"versicolor\" or \"virginica\""),
      probabilities = list(type = "object", additionalProperties = list(type = "number"),
                           description = "species -> probability, sums to 1")
    ),
    required = I(c("species", "probabilities"))
  )
)

predict_species <- function(state, flowers) {
  if (!length(flowers)) return(I(list()))
  frame <- as.data.frame(lapply(names(FEATURES), function(name) vapply(flowers, `[[`, numeric(1), name)),
                         col.names = FEATURES)
  outside <- which(frame < 0 | frame > MAX_CM, arr.ind = TRUE)
  if (nrow(outside)) {
    where <- outside[1, ]
    ml_reject(sprintf("flowers[%d].%s is %g cm; a measurement is 0 to %g cm", where[["row"]] - 1,
                      names(FEATURES)[[where[["col"]]]], frame[where[["row"]], where[["col"]]], MAX_CM))
  }
  # One call for all the flowers: randomForest's per-call overhead dwarfs its trees' work.
  probabilities <- predict(state, frame, type = "prob")
  lapply(seq_len(nrow(probabilities)), function(i) {
    row <- probabilities[i, ]
    list(species = names(row)[[which.max(row)]], probabilities = as.list(row))
  })
}

endpoints <- list(
  predict = endpoint(
    predict_species,
    params = list(flowers = list(type = "array", items = list("$ref" = "#/components/schemas/Flower"))),
    response = list(type = "array", items = list("$ref" = "#/components/schemas/Prediction")),
    doc = paste("Iris species from a random forest (200 trees) trained on R's bundled iris data:",
                "given the four sepal/petal measurements of each flower in centimetres, the most",
                "likely species and the probability of each."),
    example = list(flowers = list(list(sepal_length = 5.1, sepal_width = 3.5, petal_length = 1.4, petal_width = 0.2)))
  )
)
