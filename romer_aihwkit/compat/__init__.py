"""One module per third-party library whose private internals we use; each function fails loudly (the
package's error type naming the library version) when the internal changed."""
