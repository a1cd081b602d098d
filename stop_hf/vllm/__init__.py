"""placeholder"""
def register():
    return None
