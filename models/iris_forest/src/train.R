# Trains the iris random forest and writes artifacts/forest.rds and examples.json.
# R and randomForest from Debian (the packages of ../system-packages.lock.json), from any folder:
#   Rscript models/iris_forest/src/train.R
suppressPackageStartupMessages({
  library(randomForest)
  library(jsonlite)
})

here <- dirname(normalizePath(sub("^--file=", "", grep("^--file=", commandArgs(), value = TRUE)[[1]])))
SEED <- 0
# Column names of R's bundled iris data (datasets package), in the order model.R reads them.
FEATURES <- c(sepal_length = "Sepal.Length", sepal_width = "Sepal.Width",
              petal_length = "Petal.Length", petal_width = "Petal.Width")

set.seed(SEED)
# 30 held-out flowers, 10 of each species.
test <- unname(unlist(lapply(split(seq_len(nrow(iris)), iris$Species), sample, 10)))
train <- iris[-test, ]
forest <- randomForest(x = train[, FEATURES], y = train$Species, ntree = 200)
predicted <- predict(forest, iris[test, FEATURES])
cat(sprintf("held-out accuracy: %.4f (%d samples)\n", mean(predicted == iris$Species[test]), length(test)))

dir.create(file.path(here, "artifacts"), showWarnings = FALSE)
saveRDS(forest, file.path(here, "artifacts", "forest.rds"))
examples <- list(
  inputs = lapply(test, function(i) as.list(setNames(unlist(iris[i, FEATURES]), names(FEATURES)))),
  labels = as.character(iris$Species[test])
)
writeLines(toJSON(examples, auto_unbox = TRUE, pretty = TRUE, digits = NA), file.path(here, "examples.json"))
