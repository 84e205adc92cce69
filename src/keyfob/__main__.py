from keyfob.cli import main

# Guarded: a worker process (password hashing, spawned) imports this module again.
if __name__ == "__main__":
    main()
