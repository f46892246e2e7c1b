"""The ground floor: error types, atomic outputs, the game table, the Atari environments, the
params schema (section building blocks in `params_base`; the whole file, assembled from every
package's sections, in `config`)."""
